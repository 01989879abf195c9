"""Helpers shared by more than one test folder (fixtures stay in the conftest files)."""
