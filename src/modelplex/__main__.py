from modelplex.cli import main

main()
