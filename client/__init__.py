"""Stage `client`: calling the served models over gRPC.

    client.py     ShelfmlClient / AsyncShelfmlClient: tag(), price(), batching, deadlines, retries
    cli.py        `shelfml-client tag | price | batch` (resumable catalog files)
"""
