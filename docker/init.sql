-- The seeds' example schema and a replication user for the consumer.
CREATE USER cdc_user WITH PASSWORD 'cdc_password' REPLICATION;
GRANT CONNECT ON DATABASE wal2arrow TO cdc_user;

CREATE TABLE users (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email varchar(100),
    active bool,
    created_at timestamptz DEFAULT now()
);
CREATE TABLE orders (
    id serial PRIMARY KEY,
    user_id int4 NOT NULL,
    amount_cents int8,
    status text,
    placed_on date DEFAULT current_date
);
GRANT SELECT ON ALL TABLES IN SCHEMA public TO cdc_user;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO cdc_user;

INSERT INTO users (name, email, active) VALUES
    ('Alice', 'alice@example.com', true), ('Bob', 'bob@example.com', true), ('Carol', NULL, false);
INSERT INTO orders (user_id, amount_cents, status) VALUES
    (1, 1999, 'paid'), (1, 4550, 'paid'), (2, 120, 'pending'), (3, NULL, 'cancelled'),
    (2, 8800, 'paid'), (1, 300, 'refunded'), (3, 1250, 'pending'), (2, 99, 'paid');
