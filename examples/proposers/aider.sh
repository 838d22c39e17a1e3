#!/usr/bin/env bash
# aider as a p2p-research proposer, one-shot.
#
#   [research]
#   proposer = "command"
#   proposer_command = "bash /path/to/p2p-research/examples/proposers/aider.sh"
#
# The node runs this in a scratch copy of its baseline with its prompt in $P2P_PROMPT_FILE (one change
# of train.py, no training, no git, a one-line description at the end); only train.py comes back, so
# the .aider* files it leaves do not matter. aider edits train.py and reads program.md and SWARM.md;
# it never commits (--no-git) and never runs the shell commands it suggests. aider has no "final
# message only" output, so the description is the last line of its last reply, read from its chat
# history; without one the node summarizes the change itself. AIDER_ARGS adds flags (e.g. --model).
set -euo pipefail
: "${P2P_PROMPT_FILE:?run by a p2p-research node (research.proposer = command)}"
history=$(mktemp)
trap 'rm -f "$history"' EXIT
read_only=(--read program.md)
[ -f SWARM.md ] && read_only+=(--read SWARM.md)
# shellcheck disable=SC2086
aider --message-file "$P2P_PROMPT_FILE" train.py "${read_only[@]}" \
  --yes-always --no-git --no-auto-commits --no-dirty-commits \
  --no-check-update --no-analytics --no-show-model-warnings --no-show-release-notes \
  --no-suggest-shell-commands --no-detect-urls --no-fancy-input --no-pretty --no-stream \
  --chat-history-file "$history" --input-history-file /dev/null ${AIDER_ARGS:-} </dev/null >&2
# The last line of aider's last reply: skip its own notes ("> ..."), the prompt ("#### ..."), fences.
grep -v -e '^>' -e '^####' -e '^```' -e '^[[:space:]]*$' "$history" | tail -n 1 || true
