#!/usr/bin/env bash
# Wraps a real coding-agent CLI as a p2p-research proposer (`--proposer command`).
# The node runs this in its workspace (cwd) with program.md, SWARM.md and train.py present; whatever the
# agent leaves changed in train.py is the experiment; the last line printed is its description.
#
#   [research]
#   proposer = "command"
#   proposer_command = "bash /path/to/examples/proposers/coding_agent.sh"
#
# AGENT_CLI picks the agent (default: claude). Any CLI that edits files non-interactively works.
set -euo pipefail
PROMPT="Read program.md and SWARM.md in this folder. Propose exactly ONE new experiment by editing train.py \
(never any other file), following program.md. Do not run training. Finish by printing one line that \
describes your change."
case "${AGENT_CLI:-claude}" in
  claude) claude -p "$PROMPT" --allowedTools "Read,Edit" >/dev/null ;;
  codex)  codex exec --full-auto "$PROMPT" >/dev/null ;;
  aider)  aider --yes --no-git --message "$PROMPT" train.py >/dev/null ;;
  *) echo "unknown AGENT_CLI=${AGENT_CLI}" >&2; exit 2 ;;
esac
# Describe the change from the diff the agent left (its own summary is often several lines).
git diff --unified=0 -- train.py | grep '^[-+][A-Z_]* *=' | tr '\n' ' ' | cut -c1-200
echo
