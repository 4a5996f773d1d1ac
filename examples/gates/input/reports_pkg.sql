CREATE OR REPLACE FUNCTION customer_report(p_id NUMBER) RETURN VARCHAR2 IS
BEGIN
  RETURN customer_name(p_id) || ': ' || open_orders(p_id) || ' open orders, managed by ' || manager_chain(p_id);
END;
