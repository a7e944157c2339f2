-- 0011_egress (down)
DROP TABLE egress_deliveries;
