"""The node daemon: wires research, network and control socket; owns every task in one nursery."""
