"""Run an ablation sweep: the recipe once per overlay plus a baseline, one table, one chart.

    python tools/run_ablations.py --stage2 configs/stage2.yaml \
        --data configs/data/hypersim_vkitti.yaml --run runs/ablations \
        --overlays configs/ablations/stage2_no_fe.yaml \
                   configs/ablations/stage2_no_gradient_loss.yaml

``--print-commands`` prints the rows' commands instead. The logic is dm_lightning.recipes.ablations
(``--help`` for the options).
"""

import sys

from dm_lightning.recipes.ablations import main

if __name__ == "__main__":
    sys.exit(main())
