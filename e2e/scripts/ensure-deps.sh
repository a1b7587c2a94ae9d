#!/usr/bin/env bash
# The e2e cluster's host packages (sshd, iproute2, util-linux, ...) are
# installed by the project-wide scripts/deps.sh; this name is kept for
# e2e/e2e.mk and the harness's error messages.
exec bash "$(cd "$(dirname "$0")/../.." && pwd)/scripts/deps.sh" "$@"
