#!/usr/bin/env bash
# DepthMaster training on several machines without SLURM, through torchrun: start this script
# on every node, from the repository root, with the same NNODES and MASTER_ADDR and that node's
# NODE_RANK (0 .. NNODES-1). Node 0's address must be reachable from the others.
#
#   NNODES=2 NODE_RANK=0 GPUS_PER_NODE=8 MASTER_ADDR=node0 tools/slurm/torchrun_multinode.sh  # node0
#   NNODES=2 NODE_RANK=1 GPUS_PER_NODE=8 MASTER_ADDR=node0 tools/slurm/torchrun_multinode.sh  # node1
#
# which runs, on node 0 (README "Scaling out"):
#
#   torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr node0 --master_port 29500 \
#       -m dm_lightning fit --config configs/stage1.yaml --config configs/data/hypersim_vkitti.yaml \
#       --trainer.num_nodes 2 --trainer.devices 8 --trainer.strategy ddp
#
# torchrun starts GPUS_PER_NODE processes per node and gives each its rank in the environment
# (RANK, LOCAL_RANK, WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT), which Lightning reads
# (TorchElasticEnvironment). Inside a SLURM job Lightning reads SLURM's variables instead: use
# tools/slurm/fit.sbatch there.
#
# Every node must see the same shards (a shared file system, or object storage through pipe:
# URLs) and the same run folder (rank 0 writes checkpoints; every rank reads them on resume).
# A stopped or failed run goes on from its last.ckpt when the same command is started again on
# every node with --ckpt_path last added (arguments after the script go to `dm-lightning fit`).
#
# Variables: NNODES, NODE_RANK, GPUS_PER_NODE, MASTER_ADDR (required); MASTER_PORT (29500);
# STAGE (1, or 2 with MODEL_PATH=<stage-1 run>/export); CONFIG and DATA_CONFIG replace the stage
# and data configs (tests/test_multinode.py runs this script with the tiny CPU configs);
# TORCHRUN (torchrun on PATH).
set -eo pipefail

: "${NNODES:?set NNODES, the number of nodes}"
: "${NODE_RANK:?set NODE_RANK, the rank of this node (0 .. NNODES-1)}"
: "${GPUS_PER_NODE:?set GPUS_PER_NODE, the processes (GPUs) per node}"
: "${MASTER_ADDR:?set MASTER_ADDR, the address of node 0}"
MASTER_PORT=${MASTER_PORT:-29500}
STAGE=${STAGE:-1}
CONFIG=${CONFIG:-configs/stage${STAGE}.yaml}
DATA_CONFIG=${DATA_CONFIG:-configs/data/hypersim_vkitti.yaml}
MODEL_ARGS=()
if [ "$STAGE" = 2 ]; then
    MODEL_ARGS=(--model.init_args.model_path "${MODEL_PATH:?STAGE=2 needs MODEL_PATH=<stage-1 run>/export}")
fi

exec "${TORCHRUN:-torchrun}" \
    --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m dm_lightning fit --config "$CONFIG" --config "$DATA_CONFIG" \
    --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS_PER_NODE" --trainer.strategy ddp \
    "${MODEL_ARGS[@]}" "$@"
