CREATE OR REPLACE FUNCTION open_orders(p_customer NUMBER) RETURN NUMBER IS
  v_count NUMBER;
BEGIN
  SELECT count(*) INTO v_count FROM orders
   WHERE customer_id = p_customer AND closed_at IS NULL AND created_at < SYSDATE;
  RETURN v_count;
END;
