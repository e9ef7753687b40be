-- The demo's source schema: a small shop (DB1).
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    full_name text NOT NULL,
    email text NOT NULL UNIQUE,
    legacy_flags text
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    amount_cents bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE order_items (
    order_id bigint NOT NULL REFERENCES orders(id),
    line int NOT NULL,
    sku text NOT NULL,
    quantity int NOT NULL,
    PRIMARY KEY (order_id, line)
);
INSERT INTO customers (full_name, email, legacy_flags)
SELECT 'Customer ' || g || ' Example', 'c' || g || '@example.com', 'x'
FROM generate_series(1, 200) g;
INSERT INTO orders (customer_id, amount_cents)
SELECT 1 + (g % 200), 100 + g * 7 FROM generate_series(1, 1000) g;
INSERT INTO order_items SELECT o.id, l, 'SKU-' || (o.id * l % 97), l FROM orders o, generate_series(1, 2) l;
