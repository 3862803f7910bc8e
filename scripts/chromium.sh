#!/usr/bin/env bash
# Make Debian's Chromium available at /usr/bin/chromium for the browser test (tests/test_dashboard_browser.py).
#
# Idempotent and instant when it is already installed. Otherwise, as root, `apt-get install -y chromium`
# (non-interactive), running `apt-get update` only when the first install attempt fails. Playwright's own
# browser downloads are never used: the test drives this Chromium through Playwright's executable_path.
# FLUIDMARGIN_CHROMIUM overrides the path that is checked. Prints the path on stdout.
set -euo pipefail

CHROMIUM=${FLUIDMARGIN_CHROMIUM:-/usr/bin/chromium}
say() { echo "chromium.sh: $*" >&2; }

if [ -x "$CHROMIUM" ]; then
    echo "$CHROMIUM"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "error: $CHROMIUM is missing and this is not root: install Debian's chromium package (sudo apt-get install chromium)"
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
say "installing Chromium (apt-get install chromium)"
if ! apt-get install -y -q --no-install-recommends chromium >&2; then
    say "install failed; running apt-get update and trying again"
    apt-get update -q >&2 || true
    apt-get install -y -q --no-install-recommends chromium >&2 || {
        say "error: apt-get install chromium failed"
        exit 1
    }
fi
[ -x "$CHROMIUM" ] || {
    say "error: chromium installed but $CHROMIUM is not there"
    exit 1
}
echo "$CHROMIUM"
