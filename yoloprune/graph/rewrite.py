"""Reversible pruning-friendly rewrites of YOLO blocks that split channels, found by a registry keyed on block type.

Blocks such as `C2f`, `C3k2` and `C2PSA` compute one convolution and then `chunk`/`split` its output. A dependency
graph cannot prune such a tensor safely (the halves have different consumers), so each block is rewritten into an
exactly equivalent split-free form (one convolution per half, weights copied) before tracing, and folded back into the
stock Ultralytics class after pruning. Folding needs both halves to keep equal widths; `tied_convs` tells the
allocator which convolutions must end equally wide.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from ultralytics.nn.modules.block import C2PSA, C2f, C2fPSA, C3k2

from .convs import cat_out_channels, split_out_channels

_HANDLERS: dict[type, "BlockHandler"] = {}
_MODULE_STATE = {"_parameters", "_buffers", "_modules", "training"}


def register_block(*stock_types: type) -> Callable[[type], type]:
    """Class decorator: register a `BlockHandler` subclass for the given stock Ultralytics block types (exact type)."""

    def wrap(handler_cls: type) -> type:
        for t in stock_types:
            _HANDLERS[t] = handler_cls(t)
        return handler_cls

    return wrap


def registered_blocks() -> dict[type, "BlockHandler"]:
    """Return a copy of the registry: stock block type -> handler."""
    return dict(_HANDLERS)


def _plain_attrs(module: nn.Module) -> dict:
    """Non-tensor, non-module attributes of a module (Ultralytics' `i`, `f`, `type`, `np`, block hyper-parameters)."""
    return {k: v for k, v in vars(module).items() if k not in _MODULE_STATE and not k.startswith("_")}


class SplitBlock(nn.Module):
    """Base of the split-free forms: remembers the stock class and attributes it was made from."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.training = block.training
        self.stock_type = type(block)
        self.stock_attrs = _plain_attrs(block)
        for k in ("i", "f", "type", "np"):  # routing attributes that Ultralytics' forward loop reads
            if k in self.stock_attrs:
                setattr(self, k, self.stock_attrs[k])

    def tied_convs(self) -> tuple[nn.Module, ...]:
        """Convolutions whose output widths must stay equal for the block to fold back into its stock class."""
        return (self.cv1a.conv, self.cv1b.conv)

    def fold(self) -> nn.Module:
        """Return the stock block with `cv1 = cat(cv1a, cv1b)` and the current (possibly pruned) width."""
        ca, cb = self.cv1a.conv.out_channels, self.cv1b.conv.out_channels
        if ca != cb:
            raise RuntimeError(f"cannot fold {self.stock_type.__name__}: split halves have {ca} and {cb} channels")
        stock = self.stock_type.__new__(self.stock_type)
        nn.Module.__init__(stock)
        for k, v in self.stock_attrs.items():
            setattr(stock, k, v)
        stock.cv1 = cat_out_channels([self.cv1a, self.cv1b])
        stock.cv2 = self.cv2
        stock.m = self.m
        stock.c = ca
        stock.training = self.training
        return stock


class SplitC2f(SplitBlock):
    """Split-free `C2f`/`C3k2`/`C2fPSA`: `y = [cv1a(x), cv1b(x)]`, each inner block extends `y`, `cv2(cat(y))`."""

    def __init__(self, block: nn.Module):
        super().__init__(block)
        self.cv1a, self.cv1b = split_out_channels(block.cv1, (block.c, block.c))
        self.cv2 = block.cv2
        self.m = block.m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1a(x), self.cv1b(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SplitC2PSA(SplitBlock):
    """Split-free `C2PSA`: `a = cv1a(x)`, `b = m(cv1b(x))`, `cv2(cat(a, b))`."""

    def __init__(self, block: nn.Module):
        super().__init__(block)
        self.cv1a, self.cv1b = split_out_channels(block.cv1, (block.c, block.c))
        self.cv2 = block.cv2
        self.m = block.m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(torch.cat((self.cv1a(x), self.m(self.cv1b(x))), 1))


class BlockHandler:
    """Rewrite one stock block type into its split-free form (`fold()` on the result reverses it)."""

    split_type: type = SplitBlock

    def __init__(self, stock_type: type):
        self.stock_type = stock_type

    def rewrite(self, block: nn.Module) -> SplitBlock:
        """Return the exactly equivalent split-free form of `block`."""
        return self.split_type(block)


@register_block(C2f, C3k2, C2fPSA)
class C2fHandler(BlockHandler):
    """`C2f` family: `cv1(x).chunk(2)` feeding a chain of inner blocks."""

    split_type = SplitC2f


@register_block(C2PSA)
class C2PSAHandler(BlockHandler):
    """`C2PSA`: `cv1(x).split((c, c))`, attention blocks on the second half."""

    split_type = SplitC2PSA


def _replace_children(module: nn.Module, fn: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace, depth-first, every child for which `fn` returns a module; return how many were replaced."""
    n = 0
    for name, child in list(module.named_children()):
        n += _replace_children(child, fn)
        new = fn(child)
        if new is not None:
            setattr(module, name, new)
            n += 1
    return n


def rewrite_blocks(model: nn.Module) -> int:
    """Rewrite, in place, every registered split block of `model` into its split-free form; return the count."""

    def fn(child):
        handler = _HANDLERS.get(type(child))
        return handler.rewrite(child) if handler else None

    return _replace_children(model, fn)


def fold_blocks(model: nn.Module) -> int:
    """Fold, in place, every split-free block of `model` back into its stock Ultralytics class; return the count."""
    return _replace_children(model, lambda child: child.fold() if isinstance(child, SplitBlock) else None)
