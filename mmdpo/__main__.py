from mmdpo.cli import main

main()
