"""Routed attention spans (TRAR) as a model option: `--attention routed`, `--orders`, `--routing` (train.attention,
train.orders, train.routing). The attention itself is models/attention.py's; a routed model's routers are built by
TokenViT from its config (`attention`, `orders`, `routing`)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from tokenforge.errors import TokenforgeError
from tokenforge.models.options.base import ModelOption


class RoutedAttention(ModelOption):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from tokenforge.models import ATTENTIONS, ROUTINGS

        group = parser.add_argument_group("attention spans (TRAR, train.attention; task 0 only, later tasks inherit it)")
        group.add_argument(
            "--attention",
            choices=ATTENTIONS,
            default="global",
            help="global: every token attends to all; routed: TRAR's routed attention spans, a router per block mixing "
            "attention within each token's grid window of every --orders (see tokenforge.models.attention)",
        )
        group.add_argument(
            "--orders",
            type=int,
            nargs="+",
            default=[0, 1, 2, 3],
            metavar="ORDER",
            help="routed: span orders, each a (2o+1)x(2o+1) window around the token; 0 = global (TRAR's 0 1 2 3)",
        )
        group.add_argument(
            "--routing",
            choices=ROUTINGS,
            default="soft",
            help="routed: soft (softmax weights over the orders) | hard (one order per sample: gumbel-softmax, "
            "temperature 10 -> 0.1 over each task; argmax at evaluation)",
        )

    def check(self, args: argparse.Namespace) -> None:
        orders = args.orders
        if args.attention == "routed" and (not orders or min(orders) < 0 or len(set(orders)) < len(orders)):
            raise TokenforgeError(f"train.orders: distinct whole numbers >= 0 (0 = global), at least one, got {orders}")

    def config_fields(self, args: argparse.Namespace) -> dict:
        """The ModelConfig fields of --attention, --orders and --routing; none for global attention, so a global model's
        config (and model.json) is what it was before routed attention existed."""
        if args.attention == "global":
            return {}
        return {"attention": args.attention, "orders": tuple(args.orders), "routing": args.routing}

    def start(self, model, args: argparse.Namespace):
        """A pretrained start (--init) with the attention of the flags: routed, its weights load into everything but
        the new routers, which start fresh (seeded)."""
        from tokenforge.models.tokenvit import TokenViT

        options = self.config_fields(args)
        if not options or all(getattr(model.config, k) == v for k, v in options.items()):
            return model
        if args.prompt_tokens:
            raise TokenforgeError("train.prompts: a frozen backbone would keep the routers new to the --init model (train.attention "
                                  "routed) at their random start; prompt-tune a routed --init model or global attention")
        routed = TokenViT(replace(model.config, **options), getattr(model, "codebook", None))
        try:
            missing, unexpected = routed.load_state_dict(model.state_dict(), strict=False)
        except RuntimeError as exc:  # a routed start with other orders: router shapes differ
            raise TokenforgeError(f"--init {args.init}: weights do not fit this routed model ({str(exc).splitlines()[-1].strip()})") from None
        if unexpected or any(".attn.router." not in k for k in missing):
            raise TokenforgeError(f"--init {args.init}: weights do not fit a routed model ({(unexpected + missing)[0]})")
        return routed


ROUTED_ATTENTION = RoutedAttention()
