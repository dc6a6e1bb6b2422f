"""Dassl's samplers by name: RandomSampler, SequentialSampler, RandomDomainSampler,
SeqDomainSampler, RandomClassSampler. They draw with python's `random` (and numpy for a class
with fewer than `n_ins` items), like Dassl's, so the run's seed fixes them.
"""
import copy
import random
from collections import defaultdict

import numpy as np
from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler

__all__ = ["SAMPLERS", "build_sampler", "RandomDomainSampler", "SeqDomainSampler", "RandomClassSampler"]


def _indices_by(data_source, key):
    groups = defaultdict(list)
    for i, item in enumerate(data_source):
        groups[key(item)].append(i)
    return groups


def _images_per_domain(domain_dict, batch_size, n_domain, sampler):
    """batch_size / n_domain, checked: it divides evenly and every domain has that many images."""
    if n_domain == 0 or batch_size % n_domain != 0:
        raise ValueError(f"{sampler}: the batch size ({batch_size}) must be a multiple of the number of "
                         f"domains per batch ({n_domain})")
    n_img = batch_size // n_domain
    small = {d: len(idxs) for d, idxs in domain_dict.items() if len(idxs) < n_img}
    if small:
        raise ValueError(f"{sampler}: each batch takes {n_img} images per domain, but domain(s) {small} "
                         "have fewer (domain: count); lower the batch size")
    return n_img


class DomainBatchSampler(Sampler):
    """Dassl's domain samplers share this: rounds of `n_img_per_domain` random images (without
    replacement) from each domain of `round_domains()`, until a drawn domain runs low."""

    def __iter__(self):
        domain_dict = copy.deepcopy(self.domain_dict)
        final_idxs = []
        stop_sampling = False
        while not stop_sampling:
            for domain in self.round_domains():
                idxs = domain_dict[domain]
                selected = random.sample(idxs, self.n_img_per_domain)
                final_idxs.extend(selected)
                for idx in selected:
                    idxs.remove(idx)
                if len(idxs) < self.n_img_per_domain:
                    stop_sampling = True
        return iter(final_idxs)

    def __len__(self):
        return self.length


class RandomDomainSampler(DomainBatchSampler):
    """Each batch: `n_domain` random domains (all when n_domain <= 0), batch_size / n_domain
    random images from each, without replacement; the epoch ends when a drawn domain runs low."""

    def __init__(self, data_source, batch_size, n_domain):
        self.data_source = data_source
        self.domain_dict = _indices_by(data_source, lambda item: item.domain)
        self.domains = list(self.domain_dict)
        if n_domain is None or n_domain <= 0:
            n_domain = len(self.domains)
        if n_domain > len(self.domains):
            raise ValueError(f"RandomDomainSampler: N_DOMAIN={n_domain} but the data has "
                             f"{len(self.domains)} domain(s)")
        self.n_img_per_domain = _images_per_domain(self.domain_dict, batch_size, n_domain,
                                                   "RandomDomainSampler")
        self.batch_size = batch_size
        self.n_domain = n_domain
        self.length = len(list(self.__iter__()))

    def round_domains(self):
        return random.sample(self.domains, self.n_domain)


class SeqDomainSampler(DomainBatchSampler):
    """Each batch: batch_size / n_domains random images from every domain, in sorted domain order."""

    def __init__(self, data_source, batch_size):
        self.data_source = data_source
        self.domain_dict = _indices_by(data_source, lambda item: item.domain)
        self.domains = sorted(self.domain_dict)
        self.n_domain = len(self.domains)
        self.n_img_per_domain = _images_per_domain(self.domain_dict, batch_size, self.n_domain, "SeqDomainSampler")
        self.batch_size = batch_size
        self.length = len(list(self.__iter__()))

    def round_domains(self):
        return self.domains


class RandomClassSampler(Sampler):
    """Each batch: batch_size // n_ins random classes with `n_ins` images each (a class with fewer
    images is filled by drawing with replacement)."""

    def __init__(self, data_source, batch_size, n_ins):
        if batch_size < n_ins:
            raise ValueError(f"RandomClassSampler: batch_size={batch_size} must be no less than n_ins={n_ins}")
        self.data_source = data_source
        self.batch_size = batch_size
        self.n_ins = n_ins
        self.ncls_per_batch = batch_size // n_ins
        self.index_dic = _indices_by(data_source, lambda item: item.label)
        self.labels = list(self.index_dic)
        if len(self.labels) < self.ncls_per_batch:
            raise ValueError(
                f"RandomClassSampler: a batch of {batch_size} with {n_ins} images per class needs "
                f"{self.ncls_per_batch} classes, but the data has {len(self.labels)}"
            )
        self.length = len(list(self.__iter__()))

    def __iter__(self):
        batch_idxs_dict = defaultdict(list)
        for label in self.labels:
            idxs = copy.deepcopy(self.index_dic[label])
            if len(idxs) < self.n_ins:
                idxs = list(np.random.choice(idxs, size=self.n_ins, replace=True))
            random.shuffle(idxs)
            for start in range(0, len(idxs) - self.n_ins + 1, self.n_ins):
                batch_idxs_dict[label].append(idxs[start:start + self.n_ins])

        avai_labels = copy.deepcopy(self.labels)
        final_idxs = []
        while len(avai_labels) >= self.ncls_per_batch:
            for label in random.sample(avai_labels, self.ncls_per_batch):
                final_idxs.extend(batch_idxs_dict[label].pop(0))
                if not batch_idxs_dict[label]:
                    avai_labels.remove(label)
        return iter(int(i) for i in final_idxs)

    def __len__(self):
        return self.length


SAMPLERS = ("RandomSampler", "SequentialSampler", "RandomDomainSampler", "SeqDomainSampler", "RandomClassSampler")


def build_sampler(sampler_type, cfg=None, data_source=None, batch_size=32, n_domain=0, n_ins=16):
    """The sampler named `sampler_type` over `data_source` (an unknown name lists the valid ones)."""
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomDomainSampler":
        return RandomDomainSampler(data_source, batch_size, n_domain)
    if sampler_type == "SeqDomainSampler":
        return SeqDomainSampler(data_source, batch_size)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins)
    raise ValueError(f"Unknown sampler type: {sampler_type!r}; expected one of {', '.join(SAMPLERS)}")
