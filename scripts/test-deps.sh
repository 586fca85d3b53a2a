#!/usr/bin/env bash
# What the tests drive besides the astrid binary, installed if missing (idempotent, quiet when
# everything is there). Debian packages need root, or sudo.
#   tmux: the chat's Ctrl-C test runs `astrid chat` on a real terminal.
set -euo pipefail

missing=()
command -v tmux >/dev/null || missing+=(tmux)

if [ "${#missing[@]}" -gt 0 ]; then
    sudo_if_needed=""
    [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
    echo "installing ${missing[*]}" >&2
    $sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq "${missing[@]}" >/dev/null
fi
