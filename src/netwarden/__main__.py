from netwarden.cli.app import main

main()
