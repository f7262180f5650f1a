# Sourced by the scripts that install what they need from Debian.
#
#   debian_install [APT-GET INSTALL OPTIONS] PACKAGE...
#
# Refreshes the package lists and installs quietly, as root or through sudo.
debian_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  local arg packages=()
  for arg in "$@"; do [[ $arg == -* ]] || packages+=("$arg"); done
  echo "installing Debian packages: ${packages[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
