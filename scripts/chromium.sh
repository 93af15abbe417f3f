#!/usr/bin/env bash
# Makes sure Debian's chromium is installed for the web console's browser
# tests (tests/test_console.py drives it through Playwright's executable_path;
# Playwright's own browser builds are never downloaded). Installs the
# `chromium` package with apt-get when `chromium` is not on PATH, with sudo
# when not root. Prints the browser's path.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium: not found; installing Debian's chromium package" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "chromium: not root and no sudo; install the chromium package by hand" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
fi
command -v chromium
