#!/usr/bin/env bash
# Walkthrough: two nodes on one machine, joined by a bootstrap address, then inspected from the CLI.
# Run from the repository root after `make install`:  bash examples/two_nodes.sh
set -euo pipefail
P=${P:-.venv/bin/p2p-research}
DIR=$(mktemp -d /tmp/p2p-two-nodes.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT

echo "== 1. two node homes (a tiny token budget so experiments take seconds)"
$P init --home "$DIR/alice" --profile research >/dev/null
$P init --home "$DIR/bob" --profile laptop >/dev/null
for h in alice bob; do
  sed -i 's/^budget_tokens = .*/budget_tokens = 16384/' "$DIR/$h/node.toml"
done

echo "== 2. alice starts and prints her bootstrap address"
$P node start --home "$DIR/alice" >"$DIR/alice.out" 2>"$DIR/alice.err" &
until grep -q '^control:' "$DIR/alice.out" 2>/dev/null; do sleep 0.5; done
cat "$DIR/alice.out"
ADDR=$(awk '/^address:/ {print $2; exit}' "$DIR/alice.out")

echo "== 3. bob joins through alice's address"
$P node start --home "$DIR/bob" --bootstrap "$ADDR" >"$DIR/bob.out" 2>"$DIR/bob.err" &
until grep -q '^control:' "$DIR/bob.out" 2>/dev/null; do sleep 0.5; done
sleep 3

echo "== 4. inspect"
$P id --home "$DIR/bob"
$P peers -v --home "$DIR/bob"
echo "(waiting 60 s for a few experiments)"; sleep 60
$P status --home "$DIR/alice"
$P experiments --home "$DIR/bob"
$P leaderboard --home "$DIR/bob"
$P post --home "$DIR/bob" "bob here: **hello** alice"
sleep 2
$P board --home "$DIR/alice"
echo "== homes kept in $DIR"
