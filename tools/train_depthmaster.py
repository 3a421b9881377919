"""Train the DepthMaster recipe in one command: stage 1, stage 2 from its export, then test.

    python tools/train_depthmaster.py --stage1 configs/stage1.yaml --stage2 configs/stage2.yaml \
        --data configs/data/hypersim_vkitti.yaml --run runs/recipe

Re-running the same command skips finished stages and resumes an interrupted one. The logic
is dm_lightning.recipes.pipeline, its command line dm_lightning.recipes.pipeline_cli
(``--help`` for the options).
"""

import sys

from dm_lightning.recipes.pipeline_cli import main

if __name__ == "__main__":
    sys.exit(main())
