#!/usr/bin/env bash
# OpenAI Codex CLI as a p2p-research proposer, one-shot.
#
#   [research]
#   proposer = "command"
#   proposer_command = "bash /path/to/p2p-research/examples/proposers/codex.sh"
#
# The node runs this in a scratch copy of its baseline with its prompt in $P2P_PROMPT_FILE (one change
# of train.py, no training, no git, a one-line description at the end); only train.py comes back.
# `codex exec` never asks for approval; the workspace-write sandbox confines its edits to this folder
# (the folder is a throwaway git repository, so no --skip-git-repo-check trouble either way). Its
# progress goes to stderr; its final message is printed last, and that message's last line is the
# description. CODEX_ARGS adds flags (e.g. --model, or -c features.use_legacy_landlock=true in
# containers where the sandbox cannot start).
set -euo pipefail
: "${P2P_PROMPT_FILE:?run by a p2p-research node (research.proposer = command)}"
last=$(mktemp)
trap 'rm -f "$last"' EXIT
# shellcheck disable=SC2086
codex exec --sandbox workspace-write --skip-git-repo-check --output-last-message "$last" ${CODEX_ARGS:-} - \
  <"$P2P_PROMPT_FILE" >&2
cat "$last"
