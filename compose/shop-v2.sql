-- The demo's target schema on DB2, after the migration: customers renamed to clients with the name split in two
-- and legacy_flags dropped; integer cents became numeric amounts.
CREATE TABLE clients (
    id bigint PRIMARY KEY,
    first_name text NOT NULL,
    last_name text NOT NULL,
    email text NOT NULL UNIQUE
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES clients(id),
    amount numeric(14,2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE order_items (
    order_id bigint NOT NULL REFERENCES orders(id),
    line int NOT NULL,
    sku text NOT NULL,
    quantity int NOT NULL,
    PRIMARY KEY (order_id, line)
);
