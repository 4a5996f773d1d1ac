CREATE OR REPLACE FUNCTION customer_name(p_id NUMBER) RETURN VARCHAR2 IS
  v_name VARCHAR2(200);
BEGIN
  SELECT name INTO v_name FROM customers WHERE id = p_id;
  RETURN v_name;
END;
