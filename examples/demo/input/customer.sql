CREATE OR REPLACE PACKAGE customer_pkg AS
  PROCEDURE sync_customer;
  FUNCTION count_customer RETURN NUMBER;
END customer_pkg;
