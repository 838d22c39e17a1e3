#!/usr/bin/env bash
# Claude Code as a p2p-research proposer, one-shot.
#
#   [research]
#   proposer = "command"
#   proposer_command = "bash /path/to/p2p-research/examples/proposers/claude_code.sh"
#
# The node runs this in a scratch copy of its baseline (train.py, prepare.py, program.md, SWARM.md) with
# the node's prompt in $P2P_PROMPT_FILE: propose one change of train.py, do not train, do not use git,
# end with a one-line description. Only train.py comes back. Claude may read and edit files, not run
# commands. Its final message goes to stdout; its last line is the experiment's description.
# CLAUDE_MAX_TURNS (default 30) bounds the session; CLAUDE_ARGS adds flags (e.g. --model).
set -euo pipefail
: "${P2P_PROMPT_FILE:?run by a p2p-research node (research.proposer = command)}"
# shellcheck disable=SC2086
claude -p "$(cat "$P2P_PROMPT_FILE")" \
  --permission-mode acceptEdits \
  --allowedTools "Read,Edit,Write,Glob,Grep" \
  --disallowedTools "Bash" \
  --max-turns "${CLAUDE_MAX_TURNS:-30}" \
  --output-format text ${CLAUDE_ARGS:-} </dev/null
