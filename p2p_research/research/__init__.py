"""Research layer: workspace, experiment ids, proposers, runner and the loop's decisions.

Knows neither trio sockets nor libp2p.
"""
