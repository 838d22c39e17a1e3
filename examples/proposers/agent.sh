#!/usr/bin/env bash
# Any coding-agent CLI as a p2p-research proposer, one-shot: the generic adapter.
#
#   [research]
#   proposer = "command"
#   proposer_command = "AGENT_CMD='my-agent --yes' bash /path/to/p2p-research/examples/proposers/agent.sh"
#
# AGENT_CLI=claude|codex|aider runs the matching adapter beside this file. Otherwise AGENT_CMD is run
# with the node's prompt on stdin (the prompt is also in $P2P_PROMPT and $P2P_PROMPT_FILE), in a
# scratch copy of the baseline: it should edit train.py and print a one-line description last. Only
# train.py comes back; with no usable last line the node describes the change itself.
set -euo pipefail
: "${P2P_PROMPT_FILE:?run by a p2p-research node (research.proposer = command)}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "${AGENT_CLI:-}" in
  claude) exec bash "$here/claude_code.sh" ;;
  codex)  exec bash "$here/codex.sh" ;;
  aider)  exec bash "$here/aider.sh" ;;
  "")     ;;
  *) echo "unknown AGENT_CLI=${AGENT_CLI} (claude, codex, aider, or set AGENT_CMD)" >&2; exit 2 ;;
esac
: "${AGENT_CMD:?set AGENT_CLI (claude, codex, aider) or AGENT_CMD (any agent command line)}"
bash -c "$AGENT_CMD" <"$P2P_PROMPT_FILE"
