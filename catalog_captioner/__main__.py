from catalog_captioner.cli import main

main()
