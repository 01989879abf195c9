"""Benchmarks for the Event Stream Service.

``python -m bench`` runs the end-to-end scenarios (``bench/scenarios/``) against
a real ``ess serve`` subprocess; ``python -m bench NAME ...`` runs some of them.
"""
