"""The two ProRank training stages (installed as `prorank_edge.train`; needs the `train` extra).

stage 1 (`stage1_grpo`): GRPO prompt warm-up, the model learns to answer the scoring prompt with "0" or "1";
stage 2 (`stage2_listwise`): listwise learning of the score logit("1") - logit("0") itself.
"""
