from ocstream.cli import main

main()
