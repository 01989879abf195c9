# Sourced by the ensure-*.sh scripts: one way to install what they need.
#
# debian_install SCRIPT WHAT PACKAGE [APT-OPTION...]
#   Installs Debian's PACKAGE (quietly, non-interactively) when we are root;
#   otherwise exits 1 with one line saying that WHAT is missing and how to
#   install it. SCRIPT prefixes the messages.
debian_install() {
    local script="$1" what="$2" package="$3"
    shift 3
    if [ "$(id -u)" -ne 0 ]; then
        echo "$script: $what is not installed and we are not root to install it (apt-get install $package)" >&2
        exit 1
    fi
    echo "$script: installing $package from Debian's packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" "$package" >/dev/null
}
