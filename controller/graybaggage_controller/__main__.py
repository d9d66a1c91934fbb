from .operator import main

main()
