from dm_lightning.cli import main

main()
