#!/usr/bin/env bash
# The browser test drives Debian's Chromium (/usr/bin/chromium, package `chromium`) headless.
# Install it from Debian's packages when it is missing and we may (root + apt-get); nothing is
# downloaded from anywhere else. Never fails the run by itself: without Chromium the browser
# test skips with a loud reason.
set -u
if command -v chromium >/dev/null 2>&1; then
  echo "browser: $(chromium --version 2>/dev/null | head -n1)"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "browser: installing Debian's chromium (apt-get)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/tmp/hangar-apt-chromium.log 2>&1; then
    apt-get update -q >>/tmp/hangar-apt-chromium.log 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>/tmp/hangar-apt-chromium.log 2>&1 || true
  fi
fi
if command -v chromium >/dev/null 2>&1; then
  echo "browser: installed $(chromium --version 2>/dev/null | head -n1)"
else
  echo "browser: WARNING no chromium (see /tmp/hangar-apt-chromium.log); the browser test will skip"
fi
exit 0
