from fracture_al.cli import main

main()
