#!/usr/bin/env bash
# What the tests drive besides the astrid binary, installed if missing (idempotent, quiet when
# everything is there):
#   tmux (Debian): the chat's Ctrl-C test runs `astrid chat` on a real terminal;
#   two real MCP servers, pinned, into .test-deps/ of this checkout (not committed):
#     @modelcontextprotocol/server-everything (npm) and mcp-server-time (PyPI, in a venv);
#   two real MCP clients that drive `astrid mcp serve`, pinned, beside them: the official
#     Python SDK (`mcp` on PyPI, in the same venv) and the MCP Inspector's CLI
#     (@modelcontextprotocol/inspector, npm).
# The command sandbox needs nothing installed: its namespaces, overlayfs and seccomp are in the
# kernel and in the astrid binary (its tests use python3, setsid and unshare, which a Debian
# system has). It needs user namespaces enabled and, for a daemon running as root, Linux 6.14+.
# Debian packages need root, or sudo; the servers need node/npm and python3 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."

EVERYTHING_VERSION=2026.8.31
TIME_VERSION=2026.10.19
PYTHON_SDK_VERSION=2.3.0
INSPECTOR_VERSION=2.12.0
deps=.test-deps

if ! command -v tmux >/dev/null; then
    sudo_if_needed=""
    [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
    echo "installing tmux" >&2
    $sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq tmux >/dev/null
fi

# npm_pinned DIR PACKAGE VERSION BIN: PACKAGE@VERSION under $deps/DIR, unless BIN is there
# already at that version.
npm_pinned() {
    local prefix="$deps/$1" package="$2" version="$3" bin="$4"
    if [ ! -x "$prefix/node_modules/.bin/$bin" ] || ! grep -q "\"version\": \"$version\"" \
            "$prefix/node_modules/$package/package.json" 2>/dev/null; then
        echo "installing $package@$version" >&2
        npm install --silent --no-audit --no-fund --prefix "$prefix" "$package@$version" >/dev/null
    fi
}

npm_pinned npm @modelcontextprotocol/server-everything "$EVERYTHING_VERSION" mcp-server-everything

# pip_version PACKAGE: its version in the venv, or nothing. (Not `pip show | grep -q`: grep
# leaves at the first match, pip dies of SIGPIPE, and pipefail calls the check failed, so
# every run reinstalled.)
pip_version() {
    "$deps/venv/bin/pip" show "$1" 2>/dev/null | sed -n 's/^Version: //p'
}

time_server="$deps/venv/bin/mcp-server-time"
if [ ! -x "$time_server" ] || [ "$(pip_version mcp-server-time)" != "$TIME_VERSION" ]; then
    echo "installing mcp-server-time==$TIME_VERSION" >&2
    python3 -m venv "$deps/venv"
    "$deps/venv/bin/pip" install --quiet --disable-pip-version-check "mcp-server-time==$TIME_VERSION"
fi

if [ "$(pip_version mcp)" != "$PYTHON_SDK_VERSION" ]; then
    echo "installing mcp==$PYTHON_SDK_VERSION (the official Python SDK)" >&2
    "$deps/venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$PYTHON_SDK_VERSION"
fi

npm_pinned inspector @modelcontextprotocol/inspector "$INSPECTOR_VERSION" mcp-inspector
