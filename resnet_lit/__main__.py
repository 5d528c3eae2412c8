from resnet_lit.cli import main

main()
