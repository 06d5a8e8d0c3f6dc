from netwarden.cli.entry import main

main()
