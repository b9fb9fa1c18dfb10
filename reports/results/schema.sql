CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY,
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, untrained INTEGER NOT NULL DEFAULT 0,
    attack TEXT NOT NULL, settings TEXT NOT NULL, norm TEXT NOT NULL, eps REAL NOT NULL, eps_label TEXT,
    grid TEXT NOT NULL,
    dataset_id TEXT NOT NULL, dataset_label TEXT, dataset_digest TEXT NOT NULL, seed INTEGER NOT NULL,
    n INTEGER NOT NULL,
    device TEXT, torch_version TEXT, torchattacks_version TEXT, pyautoattack_version TEXT, robustdyn_version TEXT,
    started_at TEXT, finished_at TEXT, duration_s REAL NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'running',
    UNIQUE (model, checkpoint_sha256, attack, settings, norm, eps, grid, dataset_id, dataset_digest, seed, n)
);
CREATE TABLE examples (
    run_id INTEGER NOT NULL REFERENCES runs(run_id), idx INTEGER NOT NULL,
    label INTEGER NOT NULL, clean_pred INTEGER NOT NULL, adv_pred INTEGER NOT NULL,
    broken_at REAL, perturbation REAL,
    attn_entropy_clean REAL, attn_entropy_adv REAL, attn_kl REAL, attn_tv REAL,
    dominant_kernel_clean INTEGER, dominant_kernel_adv INTEGER, dominant_changed REAL,
    gate_density_clean REAL, gate_density_adv REAL, macs_clean REAL, macs_adv REAL,
    detail TEXT,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE checks (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, check_name TEXT NOT NULL,
    dataset_digest TEXT NOT NULL, n INTEGER NOT NULL, seed INTEGER NOT NULL,
    value REAL, passed INTEGER NOT NULL, threshold TEXT, meaning TEXT, detail TEXT, settings TEXT,
    dataset_label TEXT, device TEXT, untrained INTEGER NOT NULL DEFAULT 0, created_at TEXT,
    PRIMARY KEY (model, checkpoint_sha256, check_name, dataset_digest, n, seed)
);
CREATE TABLE models (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, untrained INTEGER NOT NULL DEFAULT 0,
    family TEXT, params INTEGER, macs REAL, mean_executed_macs REAL, latency_ms REAL, latency_device TEXT,
    layout TEXT, source TEXT, updated_at TEXT,
    PRIMARY KEY (model, checkpoint_sha256)
);
CREATE TABLE bench (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, device TEXT NOT NULL, threads INTEGER NOT NULL,
    path TEXT NOT NULL, mode TEXT NOT NULL, batch INTEGER NOT NULL,
    untrained INTEGER NOT NULL DEFAULT 0, family TEXT, device_name TEXT,
    median_ms REAL, p90_ms REAL, mean_ms REAL, min_ms REAL, images_per_s REAL, repeats INTEGER, warmup INTEGER,
    params INTEGER, macs REAL, executed_macs REAL, macs_note TEXT, inputs TEXT, load_1min REAL,
    torch_version TEXT, robustdyn_version TEXT, created_at TEXT,
    PRIMARY KEY (model, checkpoint_sha256, device, threads, path, mode, batch)
);
CREATE TABLE threats (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, threat TEXT NOT NULL, settings TEXT NOT NULL,
    eps REAL NOT NULL, dataset_digest TEXT NOT NULL, seed INTEGER NOT NULL, n INTEGER NOT NULL,
    eps_label TEXT, dataset_id TEXT, dataset_label TEXT, device TEXT, untrained INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL, duration_s REAL, robustdyn_version TEXT, created_at TEXT,
    PRIMARY KEY (model, checkpoint_sha256, threat, settings, eps, dataset_digest, seed, n)
);
CREATE INDEX examples_idx ON examples(idx);
