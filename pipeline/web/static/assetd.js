// assetd review page: shared helpers (no framework, no build step).
