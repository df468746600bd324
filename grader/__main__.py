from .course import main

main()
