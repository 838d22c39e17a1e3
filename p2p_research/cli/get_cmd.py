"""`get`: take the winner home (research/io/take_home.py), as `ipfs get` writes a CID to a folder."""

from __future__ import annotations

from pathlib import Path

import typer

from p2p_research.cli.common import CliError, HomeOpt, JsonOpt, one_line_errors, print_json, resolve_home
from p2p_research.home import NodeHome


def register(app: typer.Typer) -> None:
    @app.command("get")
    @one_line_errors
    def get(
        what: str = typer.Argument("best", help="best (this node's baseline: the swarm's best it verified), "
                                               "or an experiment id or commit (prefix)"),
        to: Path = typer.Option(Path("."), "--to", help="Folder to write train.py into (your autoresearch checkout)"),
        branch: str | None = typer.Option(None, "--branch", help="Commit it on this branch of the git checkout "
                                          "at --to instead (lineage and receipts as the message; the working "
                                          "tree, index and HEAD are left alone)"),
        force: bool = typer.Option(False, "--force", help="Overwrite a different train.py in --to"),
        home: Path | None = HomeOpt, json_out: bool = JsonOpt,
    ) -> None:
        """Write the swarm's best train.py (or any commit's) into your own folder or a git branch."""
        from p2p_research.research.io.take_home import TakeHomeError, winner, write_branch, write_file
        from p2p_research.research.io.workspace import Workspace
        from p2p_research.store.ledger import Ledger

        h = NodeHome(resolve_home(home)).require()
        ledger = Ledger(h.ledger)
        try:
            w = winner(ledger, Workspace(h.repo), what)
            if branch:
                oid = write_branch(w, to, branch, force)
                where = f"branch {branch} of {to} (commit {oid[:10]})"
            else:
                where = str(write_file(w, to, force))
        except TakeHomeError as e:
            raise CliError(str(e)) from None
        finally:
            ledger.close()
        if json_out:
            return print_json({"commit": w.commit, "exp_id": w.exp_id, "val_bpb": w.val_bpb, "written": where,
                               "branch": branch, "message": w.message(),
                               "lineage": [s.__dict__ for s in w.lineage]})
        value = f"val_bpb {w.val_bpb:.6f}" if w.val_bpb is not None else "not measured"
        typer.echo(f"wrote {w.commit[:10]} ({value}, {len(w.lineage) - 1} step(s) from the genesis) to {where}")
