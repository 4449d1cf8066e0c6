#!/usr/bin/env python3
"""Ranks the experts of a task2vec store for a target task with nothing but Qdrant's Query API,
through Python's `qdrant-client` (pip install qdrant-client): a cosine prefetch on the
`model2vec` index vector, re-scored by the formula `$score + weight * complexity`
(docs/schema.md, "Ranking in any language"); the weight is in cosine units, about 0.27 times
the d_asym alpha (default 0.041, for alpha = 0.15).

Usage: select_formula.py INDEX_VECTOR.json [WEIGHT [PREFETCH [LIMIT]]]

INDEX_VECTOR.json is the target's index vector as a JSON array (the store's transform applied
to the target's Fisher vector; docs/schema.md, "Index vector"). Environment: QDRANT_URL (REST,
default http://localhost:6333), QDRANT_API_KEY (optional), COLLECTION (default
task2vec_experts). Prints a JSON array of {id, score, key, name, complexity}, best first.
"""

import json
import os
import sys

from qdrant_client import QdrantClient, models


def rank(client, collection, vector, weight=0.041, prefetch=100, limit=10):
    """The experts ranked by cosine prefetch + `$score + weight * complexity`, best first."""
    response = client.query_points(
        collection_name=collection,
        prefetch=models.Prefetch(query=vector, using="model2vec", limit=prefetch),
        query=models.FormulaQuery(
            formula=models.SumExpression(
                sum=["$score", models.MultExpression(mult=[weight, "complexity"])]
            ),
            defaults={"complexity": 0.0},
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
    weight = float(argv[2]) if len(argv) > 2 else 0.041
    prefetch = int(argv[3]) if len(argv) > 3 else 100
    limit = int(argv[4]) if len(argv) > 4 else 10
    client = QdrantClient(
        url=os.environ.get("QDRANT_URL", "http://localhost:6333"),
        api_key=os.environ.get("QDRANT_API_KEY") or None,
        # The server may be one minor version apart from the client.
        check_compatibility=False,
    )
    collection = os.environ.get("COLLECTION", "task2vec_experts")
    print(json.dumps(rank(client, collection, vector, weight, prefetch, limit)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
