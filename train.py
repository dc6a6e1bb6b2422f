"""Train or evaluate a CoOp-family model; the flags and config order of CoOp's train.py.

    python train.py --trainer CoOp --config-file configs/trainers/CoOp/demo.yaml --output-dir output/demo
"""
from trainers.cli import train_main

if __name__ == "__main__":
    train_main()
