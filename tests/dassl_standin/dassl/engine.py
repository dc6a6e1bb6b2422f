"""Dassl's trainer classes as documented: TrainerBase -> SimpleTrainer -> TrainerX."""
import os
import os.path as osp
from collections import OrderedDict

import numpy as np
import torch

from .registry import Registry

TRAINER_REGISTRY = Registry("TRAINER")


def build_trainer(cfg):
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


class TrainerBase:
    def __init__(self):
        self._models, self._optims, self._scheds = OrderedDict(), OrderedDict(), OrderedDict()
        self._writer = None

    def register_model(self, name="model", model=None, optim=None, sched=None):
        self._models[name], self._optims[name], self._scheds[name] = model, optim, sched

    def get_model_names(self, names=None):
        return list(self._models) if names is None else ([names] if isinstance(names, str) else list(names))

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            state = {"state_dict": self._models[name].state_dict(), "epoch": epoch + 1,
                     "optimizer": optim.state_dict() if optim is not None else None,
                     "scheduler": sched.state_dict() if sched is not None else None, "val_result": val_result}
            folder = osp.join(directory, name)
            os.makedirs(folder, exist_ok=True)
            file = model_name or f"model.pth.tar-{epoch + 1}"
            torch.save(state, osp.join(folder, file))
            with open(osp.join(folder, "checkpoint"), "w") as f:
                f.write(file + "\n")

    def resume_model_if_exist(self, directory):
        names = self.get_model_names()
        if not all(osp.exists(osp.join(directory, name)) for name in names):
            print("No checkpoint found, train from scratch")
            return 0
        for name in names:
            with open(osp.join(directory, name, "checkpoint")) as f:
                state = torch.load(osp.join(directory, name, f.readline().strip()), map_location="cpu")
            self._models[name].load_state_dict(state["state_dict"])
            if self._optims[name] is not None:
                self._optims[name].load_state_dict(state["optimizer"])
            if self._scheds[name] is not None:
                self._scheds[name].load_state_dict(state["scheduler"])
            start_epoch = state["epoch"]
        return start_epoch

    def load_model(self, directory, epoch=None):
        file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            state = torch.load(osp.join(directory, name, file), map_location="cpu")
            self._models[name].load_state_dict(state["state_dict"])

    def set_model_mode(self, mode="train", names=None):
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names=None):
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def init_writer(self, log_dir):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self):
        if self._writer is not None:
            self._writer.close()  # Dassl keeps the closed writer

    def write_scalar(self, tag, scalar_value, global_step=None):
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def train(self, start_epoch, max_epoch):
        self.start_epoch, self.max_epoch = start_epoch, max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def after_train(self):
        pass


class SimpleTrainer(TrainerBase):
    def __init__(self, cfg):
        super().__init__()
        self.check_cfg(cfg)
        self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.build_data_loader()
        self.build_model()
        from trainers.engine.evaluator import build_evaluator

        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf

    def check_cfg(self, cfg):
        pass

    def build_data_loader(self):
        from trainers.data import DataManager

        self.dm = DataManager(self.cfg)
        self.train_loader_x, self.val_loader, self.test_loader = (
            self.dm.train_loader_x, self.dm.val_loader, self.dm.test_loader)
        self.num_classes, self.lab2cname = self.dm.num_classes, self.dm.lab2cname

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self):
        self.start_epoch = self.resume_model_if_exist(self.cfg.RESUME or self.cfg.OUTPUT_DIR)
        self.init_writer(osp.join(self.output_dir, "tensorboard"))

    def after_epoch(self):
        last_epoch = self.epoch + 1 == self.max_epoch
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        if not self.cfg.TEST.NO_TEST and self.cfg.TEST.FINAL_MODEL == "best_val":
            result = self.test(split="val")
            if result > self.best_result:
                self.best_result = result
                self.save_model(self.epoch, self.output_dir, val_result=result, model_name="model-best.pth.tar")
        if (freq > 0 and (self.epoch + 1) % freq == 0) or last_epoch:
            self.save_model(self.epoch, self.output_dir)

    def after_train(self):
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                self.load_model(self.output_dir)
            self.test()
        self.close_writer()

    @torch.no_grad()
    def test(self, split=None):
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        loader = self.val_loader if split == "val" and self.val_loader is not None else self.test_loader
        for batch in loader:
            input, label = self.parse_batch_test(batch)
            self.evaluator.process(self.model_inference(input), label)
        results = self.evaluator.evaluate()
        return list(results.values())[0]

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None):
        return self._optims[self.get_model_names(names)[0]].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    def run_epoch(self):
        self.set_model_mode("train")
        self.num_batches = len(self.train_loader_x)
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            self.forward_backward(batch)

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device), batch["domain"].to(self.device)
