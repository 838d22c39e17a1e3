#!/usr/bin/env sh
# ensure-packages.sh "CMD [CMD...]" "PACKAGE [PACKAGE...]" "NOTE"
# Installs the Debian packages when one of the commands is missing and this user can (root with apt-get,
# or passwordless sudo); otherwise prints NOTE (what is skipped, and how to install it) and succeeds.
cmds=$1 pkgs=$2 note=$3
have() { for c in $cmds; do command -v "$c" >/dev/null 2>&1 || return 1; done; }
have && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  (apt-get install -y -qq $pkgs >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $pkgs)) >/dev/null 2>&1
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && command -v apt-get >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  sudo -n apt-get install -y -qq $pkgs >/dev/null 2>&1 || true
fi
have || echo "note: $note"
exit 0
