CREATE OR REPLACE FUNCTION manager_chain(p_employee NUMBER) RETURN VARCHAR2 IS
  v_chain VARCHAR2(4000);
BEGIN
  SELECT listagg(name, ' > ') INTO v_chain FROM employees
   START WITH id = p_employee
   CONNECT BY PRIOR manager_id = id;
  RETURN v_chain;
END;
