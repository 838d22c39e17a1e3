"""The node's edge for people and monitoring: a live web dashboard and Prometheus metrics.

Read-only views over the same handlers the control socket serves (`status`, `peers`, `experiments`,
`show`, `board`, `post`), run on the daemon's own trio loop by hypercorn's trio worker with a
Starlette app. Nothing here decides anything; it only shows what the daemon already knows.
"""
