#!/usr/bin/env python3
"""Ranks the experts of a task2vec store for a target task with nothing but Qdrant's Query API,
through Python's `qdrant-client` (pip install qdrant-client): a cosine prefetch on the
`model2vec` index vector v, re-scored by a formula whose score approximates -d_asym
(docs/schema.md, "Ranking in any language"):

    2 s |v| * index_norm * $score  -  s * index_norm**2  -  s |v|**2  +  alpha * complexity

Usage: select_formula.py INDEX_VECTOR.json [ALPHA [PREFETCH [LIMIT [SLOPE]]]]

INDEX_VECTOR.json is the target's index vector as a JSON array (the store's transform applied
to the target's Fisher vector; docs/schema.md, "The index vector"). ALPHA is d_asym's weight of
the complexity term (default 0.15); SLOPE is s = kappa / (2 n), n the length of the store's
Fisher vectors and kappa 0.78 (default 9.282e-6: EfficientNet-Lite0, n = 42016). Environment:
QDRANT_URL (REST, default http://localhost:6333), QDRANT_API_KEY (optional), COLLECTION
(default task2vec_experts). Prints a JSON array of {id, score, key, name, complexity}, best
first.
"""

import json
import math
import os
import sys

from qdrant_client import QdrantClient, models


def rank(client, collection, vector, alpha=0.15, prefetch=100, limit=10, slope=9.282e-6):
    """The experts ranked by cosine prefetch + the -d_asym formula, best first."""
    v = math.sqrt(sum(x * x for x in vector))
    response = client.query_points(
        collection_name=collection,
        prefetch=models.Prefetch(query=vector, using="model2vec", limit=prefetch),
        query=models.FormulaQuery(
            formula=models.SumExpression(
                sum=[
                    models.MultExpression(mult=[2 * slope * v, "index_norm", "$score"]),
                    models.MultExpression(mult=[-slope, "index_norm", "index_norm"]),
                    -slope * v * v,
                    models.MultExpression(mult=[alpha, "complexity"]),
                ]
            ),
            defaults={"index_norm": 0.0, "complexity": 0.0},
        ),
        limit=limit,
        with_payload=["key", "name", "complexity"],
    )
    return [
        {
            "id": str(p.id),
            "score": p.score,
            "key": (p.payload or {}).get("key"),
            "name": (p.payload or {}).get("name"),
            "complexity": (p.payload or {}).get("complexity"),
        }
        for p in response.points
    ]


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        vector = json.load(f)
    alpha = float(argv[2]) if len(argv) > 2 else 0.15
    prefetch = int(argv[3]) if len(argv) > 3 else 100
    limit = int(argv[4]) if len(argv) > 4 else 10
    slope = float(argv[5]) if len(argv) > 5 else 9.282e-6
    client = QdrantClient(
        url=os.environ.get("QDRANT_URL", "http://localhost:6333"),
        api_key=os.environ.get("QDRANT_API_KEY") or None,
        # The server may be one minor version apart from the client.
        check_compatibility=False,
    )
    collection = os.environ.get("COLLECTION", "task2vec_experts")
    print(json.dumps(rank(client, collection, vector, alpha, prefetch, limit, slope)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
