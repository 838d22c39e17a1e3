from p2p_research.cli import main

main()
